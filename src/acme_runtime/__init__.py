"""The little both services need: environment parsing, channel names, Lua loading, actor runtime.

This package imports neither service; both services import it.
"""
