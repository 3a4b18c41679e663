"""A Slidebank node: its settings, its blob store and its catalog, opened together."""

from slidebank.node.node import Node, NodeSettings

__all__ = ["Node", "NodeSettings"]
