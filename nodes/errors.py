"""The one error users see from this pack: it names the node, the input, what was seen and the fix."""


class DragEditInputError(ValueError):
    """Bad input to a DragEdit node, raised before any heavy work.

    Renders as: DragEdit <node>: input '<input>' <seen>. <fix>.
    """

    def __init__(self, node: str, input_name: str, seen: str, fix: str):
        self.node, self.input_name, self.seen, self.fix = node, input_name, seen, fix
        super().__init__(f"DragEdit {node}: input '{input_name}' {seen}. {fix.rstrip('.')}.")
