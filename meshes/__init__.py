"""What the hardware offers: device catalog, memory stats, device meshes (simulated or live).

Never imports ``estimator``: the hardware side does not depend on the model side.
"""

from meshes.catalog import CATALOG, DeviceSpec, device_spec
from meshes.mesh import DeviceMesh
from meshes.simulated import SimulatedDevice
from meshes.stats import MemoryStats
from meshes.validation import InputError

__all__ = ["CATALOG", "DeviceMesh", "DeviceSpec", "InputError", "MemoryStats", "SimulatedDevice",
           "device_spec"]
