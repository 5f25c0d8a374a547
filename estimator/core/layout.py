"""Layout: how many replicas (data), shards (tensor), stages (pipeline) and expert groups a mesh has.

Devices are taken row-major over (data, pipeline, tensor): tensor shards are neighbours, so a
tensor group stays inside one host when it can, as serving engines lay them out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshes.mesh import DeviceMesh
from meshes.validation import InputError, check_int

_ROLE = {"dp": "data", "tp": "tensor", "pp": "pipeline", "ep": "expert"}
_TOKEN = re.compile(r"^(dp|tp|pp|ep)(\d+)$")


@dataclass(frozen=True)
class Layout:
    """Parallel degrees; data × pipeline × tensor must equal the mesh's device count."""

    data: int = 1
    tensor: int = 1
    pipeline: int = 1
    expert: int = 1

    def __post_init__(self) -> None:
        for role in ("data", "tensor", "pipeline", "expert"):
            check_int(f"{role}_parallel_size", getattr(self, role))

    @property
    def devices_per_replica(self) -> int:
        return self.tensor * self.pipeline

    @property
    def size(self) -> int:
        return self.data * self.tensor * self.pipeline

    @property
    def name(self) -> str:
        parts = [f"{k}{getattr(self, v)}" for k, v in _ROLE.items() if getattr(self, v) > 1]
        return "x".join(parts) or "tp1"

    @classmethod
    def parse(cls, text: str) -> Layout:
        """``tp8``, ``dp2xtp4``, ``pp2-tp4``, ``tp8xep8`` (roles in any order, ``x``/``-``/``,``)."""
        degrees: dict[str, int] = {}
        for token in re.split(r"[x,\-\s]+", str(text).strip().lower()):
            match = _TOKEN.match(token)
            if not match or _ROLE[match.group(1)] in degrees:
                raise InputError("layout", text, "roles dpN, tpN, ppN, epN joined by 'x', each "
                                 "at most once (e.g. tp8, dp2xtp4, pp2xtp4)")
            degrees[_ROLE[match.group(1)]] = int(match.group(2))
        return cls(**degrees)

    @classmethod
    def default_for(cls, mesh: DeviceMesh) -> Layout:
        """Tensor parallel inside a host (the last mesh axis), data parallel across hosts."""
        tensor = mesh.axis_sizes[-1]
        return cls(data=mesh.size // tensor, tensor=tensor)

    @classmethod
    def resolve(cls, layout: Layout | str | None, mesh: DeviceMesh) -> Layout:
        """The layout given (or parsed, or the mesh's default), checked against ``mesh``."""
        if layout is None:
            layout = cls.default_for(mesh)
        elif isinstance(layout, str):
            layout = cls.parse(layout)
        layout.check(mesh)
        return layout

    def check(self, mesh: DeviceMesh) -> None:
        """Refuse a layout that does not tile the mesh exactly."""
        if self.size != mesh.size:
            raise InputError("layout", self.name, f"data × pipeline × tensor equal to the mesh's "
                             f"{mesh.size} devices (got {self.size})")
        if (self.data * self.tensor) % self.expert:
            raise InputError("expert_parallel_size", self.expert,
                             f"a divisor of data × tensor = {self.data * self.tensor}")

    def coordinates(self, device_index: int) -> tuple[int, int, int]:
        """(replica, stage, tensor rank) of the device at ``device_index``."""
        replica, rest = divmod(device_index, self.devices_per_replica)
        stage, rank = divmod(rest, self.tensor)
        return replica, stage, rank

    def logical_mesh(self, mesh: DeviceMesh) -> DeviceMesh:
        """The mesh viewed through this layout's axes ('data', 'pipeline', 'tensor')."""
        self.check(mesh)
        return mesh.reshape({"data": self.data, "pipeline": self.pipeline, "tensor": self.tensor})


def stage_layers(num_layers: int, stages: int) -> tuple[range, ...]:
    """Layers of each pipeline stage; extra layers go to the stages before the last.

    The last stage also carries the final norm and LM head, so it gets the floor share
    (vLLM's ``get_pp_indices`` rule): 10 layers over 4 stages → 2, 3, 3, 2.
    """
    if stages > num_layers:
        raise InputError("pipeline_parallel_size", stages, f"at most num_layers={num_layers}")
    sizes = [num_layers // stages] * stages
    for i in range(num_layers % stages):
        sizes[-2 - i] += 1
    starts = [sum(sizes[:i]) for i in range(stages)]
    return tuple(range(s, s + n) for s, n in zip(starts, sizes, strict=True))
