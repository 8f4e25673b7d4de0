"""An out-of-tree adapter: the ``toyacc`` accelerator kind, found through the ``suanli.adapters`` entry point.

It only declares what suanli asks of hardware (kind, GRES name, device variable); the toy backend sets the
variable from its allocation, as every backend does for the adapter it is given.
"""

from __future__ import annotations

from suanli.adapters import Adapter


class ToyAdapter(Adapter):
    name = "toyadapter"
    accelerator_kind = "toyacc"
    gres_name = "toyacc"
    device_env_var = "TOY_VISIBLE_DEVICES"
    description = "toy accelerators (plug-in test)"
