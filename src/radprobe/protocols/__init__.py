"""Evaluation protocols. Each reads cached features, selects on validation, scores test once."""

from radprobe.protocols.base import ProtocolInput, ProtocolResult
from radprobe.protocols.registry import PROTOCOLS, get_protocol

__all__ = ["PROTOCOLS", "ProtocolInput", "ProtocolResult", "get_protocol"]
