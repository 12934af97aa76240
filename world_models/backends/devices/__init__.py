"""Hardware backends: the LeWorld device protocol (docs/protocol.md), the host side, and device emulators.

* :mod:`~world_models.backends.devices.protocol`: framing (COBS, CRC-32), the header, payloads.
* :mod:`~world_models.backends.devices.client`: :class:`DeviceLink` and :class:`DeviceWorldModel`, the ``esp32``
  and ``fpga`` backends of ``world_models.load`` (``port=`` a device path or a pyserial URL).
* :mod:`~world_models.backends.devices.emulator`: the device side, served on a pty or a TCP port.
* :mod:`~world_models.backends.devices.faults`: a link that drops, corrupts, delays and duplicates frames, or dies.

Nothing here imports torch.
"""

from __future__ import annotations

from world_models.backends.devices.client import DeviceError, DeviceLink, DeviceTimeoutError, DeviceWorldModel
from world_models.backends.devices.protocol import ProtocolError

__all__ = ["DeviceError", "DeviceLink", "DeviceTimeoutError", "DeviceWorldModel", "ProtocolError"]
