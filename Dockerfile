# One image for every process of the service; docker-compose.yml builds it per service.
# EXTRAS: the project's extras to install, comma-separated. The default, postgres, lets each
# process reach PostgreSQL; a GPU worker's image adds gpu (docker-compose.gpu.yml), whose
# tensorflow[and-cuda] brings CUDA and cuDNN as NVIDIA's pip wheels, which TensorFlow loads by
# itself: no CUDA base image is needed, only the host's driver through the NVIDIA Container
# Toolkit. An empty EXTRAS installs the bare service (SQLite, CPU).
# Every version comes from constraints.txt, refreshed on purpose (docs/deploy.md), so a new
# release of a dependency changes no image until the file changes.
FROM python:3.11-slim
ARG EXTRAS=postgres
WORKDIR /app

# The dependencies first, in a layer of their own (several GB with gpu) that only a change of
# pyproject.toml, constraints.txt or EXTRAS rebuilds: installed with a stand-in for the
# package, which is then removed.
COPY pyproject.toml constraints.txt ./
RUN mkdir service && touch README.md service/__init__.py \
    && pip install --no-cache-dir -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
    && pip uninstall --yes --quiet transfer-service \
    && rm -rf README.md service build *.egg-info

COPY README.md alembic.ini ./
COPY service ./service
COPY migrations ./migrations
RUN pip install --no-cache-dir --no-deps -c constraints.txt . && rm -rf build *.egg-info

ENV DATA_DIR=/data
VOLUME /data
EXPOSE 8000
# On every interface: the API refuses to start so without API_KEY (or ALLOW_OPEN_WITHOUT_KEY).
CMD ["python", "-m", "service", "api", "--host", "0.0.0.0", "--port", "8000"]
