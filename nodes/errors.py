"""The errors users see from this pack, and the one place every numeric and combo input is checked.

An error names the node, the input, what was seen and the fix. Kernel errors carry the argument as data
(kernels.errors.ArgumentError); each node maps arguments to its inputs with a table (`from_argument`), never by
parsing the message.
"""
import functools
import math

from comfy_api.latest import io


class DragEditInputError(ValueError):
    """Bad input to a DragEdit node, raised before any heavy work.

    Renders as: DragEdit <node>: input '<input>' <seen>. <fix>.
    """

    def __init__(self, node: str, input_name: str, seen: str, fix: str):
        self.node, self.input_name, self.seen, self.fix = node, input_name, seen, fix
        super().__init__(f"DragEdit {node}: input '{input_name}' {seen}. {fix.rstrip('.')}.")


def from_argument(node: str, err, inputs: dict = None, fixes: dict = None, fix: str = "Fix the input") -> \
        DragEditInputError:
    """The node's error for a kernel ArgumentError: `inputs` maps kernel arguments to the node's input names
    (identity when absent), `fixes` gives the fix per argument (else `fix`)."""
    inputs, fixes = inputs or {}, fixes or {}
    return DragEditInputError(node, inputs.get(err.argument, err.argument), err.detail,
                              fixes.get(err.argument, fix))


def _numeric_problem(value, spec) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return f"is {value}"
    if spec.min is not None and value < spec.min:
        return f"is {value:g}, below its minimum {spec.min:g}"
    if spec.max is not None and value > spec.max:
        return f"is {value:g}, above its maximum {spec.max:g}"
    return None


def check_widgets(node_cls, values: dict) -> None:
    """Every Int and Float input in `values` is finite and within the range its schema declares, and every Combo
    input is one of its options.

    ComfyUI checks widget ranges at queue time but lets NaN through and never checks linked values (and skips the
    inputs a validate_inputs names), and it does not check a V3 node's combo values at all (0.3.75 only knows V1's
    list-typed combos): this runs at the top of every execute, on what the node actually received. The error names
    the input as the node shows it (its display name, e.g. 'lambda' for `lam`). The schema is built afresh, so a
    combo that lists a folder (models/ipadapter) offers the files there now, as ComfyUI re-lists a V1 loader's files
    at every queue.
    """
    schema = node_cls.define_schema()
    for spec in schema.inputs:
        value = values.get(spec.id)
        if value is None:
            continue
        label = spec.display_name or spec.id
        if isinstance(spec, (io.Int.Input, io.Float.Input)):
            problem = _numeric_problem(value, spec)
            if problem:
                low = "-inf" if spec.min is None else f"{spec.min:g}"
                high = "inf" if spec.max is None else f"{spec.max:g}"
                raise DragEditInputError(schema.display_name, label, problem,
                                         f"Use a finite number from {low} to {high}")
        elif isinstance(spec, io.Combo.Input) and spec.options and value not in spec.options:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "..."
            raise DragEditInputError(schema.display_name, label, f"is {shown}, which is not one of its choices",
                                     "Choose one of: " + ", ".join(f"'{option}'" for option in spec.options))


class DragEditNode(io.ComfyNode):
    """Base of the pack's nodes: `execute` first checks every numeric and combo input (check_widgets)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        inner = cls.__dict__["execute"].__func__ if "execute" in cls.__dict__ else None
        if inner is None or getattr(inner, "checks_widgets", False):   # ComfyUI's class clones copy the wrapper
            return

        owner = cls   # the executor calls execute on a locked clone of the class, which cannot cache its schema

        @functools.wraps(inner)
        def execute(node_cls, **inputs):
            check_widgets(owner, inputs)
            return inner(node_cls, **inputs)

        execute.checks_widgets = True
        cls.execute = classmethod(execute)
