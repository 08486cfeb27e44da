FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY migrations ./migrations
RUN pip install --no-cache-dir .
ENV DATA_DIR=/data
VOLUME /data
EXPOSE 8000
CMD ["python", "-m", "service", "api", "--host", "0.0.0.0", "--port", "8000"]
