"""Which names a spec may use. A name in a spec becomes a Python identifier in generated code
(a module attribute, an __init__ argument, a class or a function), so it must be one that cannot
break or hijack that code."""

from __future__ import annotations

import builtins
import keyword

# Public attributes of torch.nn.Module (torch 2.x): a layer named `forward` or `training` would
# replace them. Listed here so the torch-free path needs no torch import.
MODULE_ATTRIBUTES = frozenset(
    """
T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda
double dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter
get_submodule half ipu load_state_dict modules mtia named_buffers named_children named_modules
named_parameters parameters register_backward_hook register_buffer register_forward_hook
register_forward_pre_hook register_full_backward_hook register_full_backward_pre_hook
register_load_state_dict_post_hook register_load_state_dict_pre_hook register_module
register_parameter register_state_dict_post_hook register_state_dict_pre_hook requires_grad_
set_extra_state set_submodule share_memory state_dict to to_empty train training type xpu
zero_grad
""".split()
)

# Attributes that reach the interpreter's internals without an underscore: a generator's frame
# and through it a module's globals (`self.modules().gi_frame.f_globals["torch"]`), code objects,
# tracebacks, a class's mro. The AST guard refuses them in generated code (as jinja2's sandbox
# does in templates), so a layer may not be named after one either.
INTERNAL_ATTRIBUTES = frozenset(
    """
mro gi_frame gi_code gi_yieldfrom gi_running gi_suspended cr_frame cr_code cr_await cr_origin
cr_running ag_frame ag_code ag_await ag_running tb_frame tb_next tb_lasti tb_lineno f_back
f_builtins f_code f_globals f_locals f_lasti f_lineno f_trace f_trace_lines f_trace_opcodes
co_code co_consts co_names co_varnames co_filename co_name
""".split()
)

# Names the generated module itself relies on at module or function scope.
GENERATED_CODE_NAMES = frozenset(
    "torch nn Tensor Optional Any self x out identity annotations math F typing OrderedDict "
    "collections Callable".split()
    # the design-space functions generated code may define (resgen.designspace), their imports
    + "quantize regnet_width regnet_depth regnet_widths regnet_stage to_float32".split()
    + "nf_beta make_divisible".split()
    + "frexp ldexp log".split()
)
# Locals the generated network __init__ binds itself (codegen.RESERVED_LOCALS), and the block
# __init__'s implicit ones: a param or let of that name would be overwritten or collide.
NETWORK_LOCALS = frozenset({"self", "module", "index"})
BLOCK_LOCALS = frozenset({"self", "in_channels"})

_BUILTINS = frozenset(dir(builtins))

# Implicit block parameter: the channel count of the tensor entering a block.
IN_CHANNELS = "in_channels"
# Implicit block parameters for schedules over the network's blocks (timm's drop_path_rate:
# rate * block_index / (num_blocks - 1)): the block's position among all the blocks of the
# network's stages, from 0, and how many there are. A block used as a layer inside another sees
# its host's; one in the stem or head sees 0 and the total.
BLOCK_INDEX, NUM_BLOCKS = "block_index", "num_blocks"
POSITION = (BLOCK_INDEX, NUM_BLOCKS)
IMPLICIT = frozenset({IN_CHANNELS, *POSITION})
# What `from x` reads inside a block: the block's input (a layer's `from` names it or earlier
# layers; resgen.graph lowers each name to the tensor it holds).
BLOCK_INPUT = "x"  # names every block has without declaring them
# Set by a stage, never written by a user in a stage call.
STAGE_SET = frozenset({"in_channels", "dilation", *POSITION})


def problem_with(name: str, role: str) -> str | None:
    """Why `name` cannot be used as a `role` ('layer', 'parameter', 'block', ...), or None."""
    if not name.isidentifier() or not name.isascii():
        return f"`{name}` is not an ASCII Python identifier"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"`{name}` is a Python keyword"
    if name.startswith("__") or (name.startswith("_") and role in ("layer", "block")):
        return f"{role} names may not start with an underscore (`{name}`)"
    if role == "layer" and name in MODULE_ATTRIBUTES:
        return f"`{name}` would replace nn.Module.{name}"
    if role == "layer" and name in INTERNAL_ATTRIBUTES:
        return f"`{name}` is a Python internal attribute, which generated code may not use"
    if role in ("parameter", "let", "block", "network", "class") and (
        name in GENERATED_CODE_NAMES or name in _BUILTINS
    ):
        return f"`{name}` would shadow `{name}` in the generated code"
    return None


# In a stage's `named "..."` pattern: the block's position in its stage, from 0.
STAGE_INDEX = "index"


def shadowing(network, blocks, op_names) -> list[tuple[object, str]]:
    """Params and lets that would hide a name the generated code needs in the same Python scope,
    as (span, message): the network's __init__ and factory see its params and lets next to the
    block classes, helper and plugin classes it builds, and its own class; a block's __init__
    sees its params and lets next to the classes of the blocks and helpers it builds.
    (`param BasicBlock = 2` made `BasicBlock(...)` call an int.)

    `blocks`: every block in scope by name (resolve's table); `op_names(op)`: the module-level
    names an op's code uses (its helper or plugin class and imports)."""
    found: list[tuple[object, str]] = []
    seen: set[str] = set()

    def uses(layers) -> set[str]:
        names: set[str] = set()
        for layer in layers:
            if layer.kind == "block":
                names.add(layer.callee)
            elif layer.kind == "op":
                names |= set(op_names(layer.callee))
            names |= uses(layer.items)
        return names

    def check(owner: str, definitions, outer: dict[str, str]) -> None:
        for d in definitions:
            if d.name in outer:
                found.append(
                    (
                        d.span,
                        f"`{d.name}` in {owner} would hide {outer[d.name]} in the generated code",
                    )
                )

    stage_layers = [layer for stage in network.stages for layer in stage.layers]
    net_uses = uses((*network.stem, *stage_layers, *network.head))
    net_uses |= {block for stage in network.stages for block in stage.blocks}
    outer = {name: f"block `{name}`" if name in blocks else f"class `{name}`" for name in net_uses}
    outer[network.python_class] = f"the network class `{network.python_class}`"
    outer.update({name: f"the local `{name}`" for name in NETWORK_LOCALS})
    check(f"network `{network.name}`", (*network.params, *network.lets), outer)

    pending = sorted(name for name in net_uses if name in blocks)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        block = blocks[name]
        layers = (*block.main, *block.post, *(block.shortcut.layers if block.shortcut else ()))
        inner = uses(layers)
        pending += [n for n in inner if n in blocks and n not in seen]
        outer = {n: f"block `{n}`" if n in blocks else f"class `{n}`" for n in inner}
        outer.update({n: f"the local `{n}`" for n in BLOCK_LOCALS})
        check(f"block `{name}`", (*block.params, *block.lets), outer)
    return found
