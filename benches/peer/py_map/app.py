"""The cold-start bench's Python module: a wasm-graph map operator that returns each message
unchanged, built with componentize-py against wit/wasm-graph (world map-impl). Its size is the
CPython interpreter and standard library componentize-py embeds, not this code."""

from wit_world import exports
from wit_world.imports import types


class Map(exports.Map):
    def init(self, configuration: types.ModuleConfiguration) -> bool:
        return True

    def process(self, message: types.DataModel) -> types.DataModel:
        return message
