"""The kernels' one error type: an argument outside its domain, with the argument's name and the problem as data.

Nodes map `argument` to the input the user set through one table each (nodes/errors.py), never by parsing text.
"""


class ArgumentError(ValueError):
    """`argument` (a kernel parameter name, or a field of a payload) is wrong; `detail` says how, in plain words."""

    def __init__(self, argument: str, detail: str):
        super().__init__(f"{argument}: {detail}")
        self.argument, self.detail = argument, detail
