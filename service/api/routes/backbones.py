from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from starlette.concurrency import run_in_threadpool

from service.api.errors import invalid
from service.backbones import BACKBONES
from service.schemas import BackboneLayers, BackboneRead

router = APIRouter(prefix="/backbones", tags=["backbones"])


@router.get("", response_model=list[BackboneRead], summary="Every supported backbone")
def list_backbones() -> list[BackboneRead]:
    return [
        BackboneRead(
            name=backbone.name,
            default_input_size=backbone.default_input_size,
            min_input_size=backbone.min_input_size,
            weights=["imagenet", None],
        )
        for backbone in BACKBONES.values()
    ]


@router.get(
    "/{name}/layers",
    response_model=BackboneLayers,
    summary="A backbone's layers, to choose a freeze point",
    responses={404: {"description": "Unknown backbone"}},
)
async def backbone_layers(
    name: Annotated[str, Path(examples=["MobileNetV2"])],
    input_size: Annotated[
        int | None, Query(ge=1, le=2048, description="Default: the backbone's own")
    ] = None,
) -> BackboneLayers:
    backbone = BACKBONES.get(name)
    if backbone is None:
        raise HTTPException(404, f"unknown backbone {name!r}; GET /backbones lists them")
    size = input_size or backbone.default_input_size
    if size < backbone.min_input_size:
        raise invalid(
            ["input_size"],
            f"input_size {size} is below {name}'s minimum of {backbone.min_input_size}",
            part="query",
        )
    from service.ml.build import backbone_layer_rows

    rows = await run_in_threadpool(backbone_layer_rows, name, size)
    return BackboneLayers.model_validate({"backbone": name, "input_size": size, "layers": rows})
