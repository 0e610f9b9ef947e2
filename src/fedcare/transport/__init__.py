"""Channels: how the Coordinator reaches sites (in process, Ray, gRPC)."""

from fedcare.transport.base import Channel
from fedcare.transport.inprocess import InProcessChannel, SiteHandler

__all__ = ["Channel", "InProcessChannel", "SiteHandler"]
