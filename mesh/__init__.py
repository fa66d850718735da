"""meshnode's client library: ``from mesh import Client``."""

from .client import Client
from .subscription import Subscription
from .control import ControlError
from .curve import CurveKeys
from .envelope import MalformedMessage, Message, PayloadTooLarge
from .publisher import Disconnected
from .recovery import Position, Recovery
from .requests import NoResponders, RemoteError, RequestTimeout
from .subjects import Pattern

__all__ = ["Client", "Subscription", "Message", "Pattern", "Position", "Recovery", "NoResponders", "RequestTimeout", "RemoteError", "ControlError", "CurveKeys",
           "MalformedMessage", "PayloadTooLarge", "Disconnected"]
