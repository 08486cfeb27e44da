"""Job requests that cannot be honoured: a bad spec (422) or unknown id (404) names the
problem and queues nothing; a conflict with the current state is a 409.

The spec's rules one by one are unit-tested in test_spec.py; here is what a client sees.
Bad uploads, predict inputs and auth are in test_hostile.py.
"""

from __future__ import annotations

import pytest

from tests.conftest import Service, colour_images, job_body, stored_rows


@pytest.mark.any_database
def test_bad_job_specs(service: Service) -> None:
    dataset_id = service.upload(colour_images(per_class=2))["id"]
    client = service.client
    cases = [
        (job_body(dataset_id, backbone={"name": "NoSuchNet"}), 422, "NoSuchNet"),
        (job_body(dataset_id, backbone={"input_size": 16}), 422, "minimum"),
        (job_body(dataset_id, freeze={"mode": "partial"}), 422, "trainable_from"),
        (job_body(dataset_id, head={"pooling": "mean"}), 422, "pooling"),
        (job_body(dataset_id, backbone={"weights": "bogus"}), 422, "weights"),
        ({**job_body(dataset_id), "colour": "red"}, 422, "colour"),
        (job_body("d_missing"), 404, "d_missing"),
        (job_body(dataset_id, backbone={"weights": "model:m_missing"}), 404, "m_missing"),
    ]
    for body, status, named in cases:
        response = client.post("/jobs", json=body)
        assert response.status_code == status, (body, response.text)
        assert named in response.text
    assert client.get("/jobs").json() == []


def test_state_conflicts(service: Service) -> None:
    dataset_id = service.upload(colour_images(per_class=2))["id"]
    job = service.client.post("/jobs", json=job_body(dataset_id)).json()
    assert service.client.delete(f"/datasets/{dataset_id}").status_code == 409
    cancelled = service.client.post(f"/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert service.client.post(f"/jobs/{job['id']}/cancel").status_code == 409
    assert service.worker.run_until_idle() == 0
    assert service.client.delete(f"/datasets/{dataset_id}").status_code == 204
    assert stored_rows(service) == (0, 0)
    assert service.client.get(f"/datasets/{dataset_id}").status_code == 404
    assert service.client.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"
