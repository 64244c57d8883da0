"""Test handler: initialize always fails."""

from modelserve.handler import BaseHandler, Context


class FailInitHandler(BaseHandler):
    def initialize(self, context: Context) -> None:
        raise RuntimeError("weights are corrupt (on purpose)")
