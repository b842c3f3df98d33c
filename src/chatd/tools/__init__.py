"""Tools the model may call: typed Python functions with schemas derived from their signatures."""

from chatd.tools.registry import Tool, ToolRegistry, tool

__all__ = ["Tool", "ToolRegistry", "tool"]
