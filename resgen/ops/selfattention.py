"""Self-attention layers of timm's attention ResNets, each exactly as timm computes it: CLIP's
attention pool (timm.layers.AttentionPool2d), the Bottleneck Transformer's attention
(timm.layers.BottleneckAttn), HaloNet's blocked local attention (timm.layers.HaloAttn) and the
lambda layer (timm.layers.LambdaLayer).

MACs: torchvision's convention counts the multiply-accumulates of convolutions and linear layers;
attention adds matrix products of activations with activations (q·kᵀ and the attention weights
times v), which resgen counts too, as torch.utils.flop_counter does (MACs = its FLOPs / 2).
Softmax, scaling, position-embedding additions and resampling count 0, like activations."""

from __future__ import annotations

from resgen import codes
from resgen.ops.base import (
    DERIVED,
    LINEAR,
    OTHER,
    Buffer,
    Counts,
    Emit,
    Op,
    Param,
    Saved,
    Window,
)
from resgen.text import shape_text


def _heads(embed_dim: int, head_dim: int, num_heads: int | None) -> int | None:
    """timm's rule: num_heads given divides embed_dim into heads of embed_dim // num_heads;
    else heads of head_dim. None when the division is not exact (timm asserts it)."""
    if num_heads is not None:
        return num_heads if embed_dim % num_heads == 0 else None
    return embed_dim // head_dim if embed_dim % head_dim == 0 else None


class AttentionPool2d(Op):
    """timm's AttentionPool2d (CLIP's attention pool, Radford et al. 2021): the mean of the H x W
    positions becomes a query token that attends, with a learned absolute position embedding,
    over itself and every position; its projection is the output, N x out_features. The
    embedding is learned for `feat_size` (H x W) and resampled bicubically for other sizes, so
    every input size works (timm's pool_type 'token'; class_token is not modelled).

    Parameters: pos_embed ((H0 W0 + 1) x C), then q, k, v (qkv_separate) or one qkv Linear of
    C -> embed_dim each, then proj (embed_dim -> out_features, biased), in timm's state_dict
    order (a module's own parameters come first). MACs for L = H W + 1 tokens: k and v
    projections L C E each (with one qkv Linear, the q too: 3 L C E), the query's C E, q·kᵀ and
    attention·v L E each (one query), the projection E out."""

    name = "attention_pool2d"
    doc = "CLIP's attention pooling: the mean position attends over all positions (timm)"
    params = (
        Param(
            "out_features",
            "int",
            DERIVED,
            "out_features",
            "output features (default: the input's channels)",
            limit="max_channels",
        ),
        Param(
            "feat_size",
            "size",
            7,
            "feat_size",
            "H x W the position embedding is learned for",
            limit="max_spatial",
        ),
        Param(
            "embed_dim",
            "int",
            DERIVED,
            "embed_dim",
            "width of q, k, v (default: the input's channels)",
            limit="max_channels",
        ),
        Param("head_dim", "int", 64, "head_dim", "channels per head", limit="max_channels"),
        Param(
            "num_heads",
            "int",
            DERIVED,
            "num_heads",
            "heads (default: embed_dim / head_dim)",
            limit="max_channels",
        ),
        Param("qkv_bias", "bool", True, "qkv_bias", "biases of the q, k, v projections"),
        Param("qkv_separate", "bool", False, "qkv_separate", "three Linears q, k, v, not one qkv"),
        Param("drop_rate", "float", 0.0, "drop_rate", "dropout after the attention", 0, 1),
    )
    accepts = "spatial"
    family = LINEAR
    autocast = "lower"
    emit = Emit(
        "AttentionPool2d",
        in_channels="in_features",
        helper="attention_pool_2d.py.jinja",
        imports=("import torch",),
        uses=(
            "nn.Linear",
            "nn.Dropout",
            "nn.Parameter",
            "nn.init.trunc_normal_",
            "nn.functional.interpolate",
            "nn.functional.scaled_dot_product_attention",
            "torch.cat",
            "torch.zeros",
        ),
    )

    def channels(self, args, c):
        return args.get("out_features", c)

    def dims(self, args, c: int) -> tuple[int, int | None, int]:
        """(embed_dim, num_heads or None when they do not divide it, out_features)."""
        embed = args.get("embed_dim", c)
        return (
            embed,
            _heads(embed, args["head_dim"], args.get("num_heads")),
            args.get("out_features", c),
        )

    def infer(self, x, args, check):
        embed, heads, out = self.dims(args, x[0])
        if heads is None:
            given = "num_heads" if "num_heads" in args else "head_dim"
            check.error(
                codes.BAD_ARGUMENT,
                f"attention_pool2d splits embed_dim {embed} into heads of equal width, but "
                f"{given}={args.get(given)} does not divide it",
                arg=given,
                hint="give num_heads or head_dim dividing embed_dim (CLIP: head_dim=64)",
            )
            return None
        return (out,)

    def counts(self, args, x, y):
        c, tokens = x[0], x[1] * x[2] + 1
        embed, heads, out = self.dims(args, c)
        bias = args["qkv_bias"]
        feat = args["feat_size"]
        fh, fw = feat if isinstance(feat, tuple) else (feat, feat)
        params = (fh * fw + 1) * c + 3 * (c * embed + (embed if bias else 0)) + embed * out + out
        qk_macs = (3 * tokens if not args["qkv_separate"] else 2 * tokens + 1) * c * embed
        macs = qk_macs + 2 * tokens * embed + embed * out
        return Counts(params, 0, macs)

    def label(self, args, times="×"):
        heads = args.get("num_heads")
        return "attention_pool2d" + (f" {heads} heads" if heads else "")

    def parameters(self, args, x):
        c = x[0]
        embed, _heads_, out = self.dims(args, c)
        feat = args["feat_size"]
        fh, fw = feat if isinstance(feat, tuple) else (feat, feat)
        bias = args["qkv_bias"]
        if args["qkv_separate"]:
            projections = ((embed, c), *(((embed,),) if bias else ())) * 3
        else:
            projections = ((3 * embed, c), *(((3 * embed,),) if bias else ()))
        return ((fh * fw + 1, c), *projections, (out, embed), (out,))

    def saves(self, args, x, y, device):
        # The tokens (x + pos_embed) for the projections' weights; their outputs for the
        # attention; the attention's output and its log-sum-exp per head (float32), as CPU's
        # scaled_dot_product_attention keeps them; dropout's noise and output (the projection's
        # input), as nn.Dropout keeps them.
        c, tokens = x[0], x[1] * x[2] + 1
        embed, heads, _ = self.dims(args, c)
        if args["qkv_separate"]:
            projections = (
                Saved("new", (embed,), batched=True, name="q"),
                Saved("new", (tokens, embed), batched=True, name="k"),
                Saved("new", (tokens, embed), batched=True, name="v"),
            )
        else:
            projections = (Saved("new", (tokens, 3 * embed), batched=True, name="qkv"),)
        dropout = ()
        if args["drop_rate"] > 0:
            mask = ("bool", "mask") if device == "cuda" else ("activation", "noise")
            dropout = (
                Saved("new", (embed,), mask[0], batched=True, needed_by="input", name=mask[1]),
                Saved("new", (embed,), batched=True, name="dropped"),
            )
        return (
            Saved("new", (tokens, c), batched=True, name="tokens"),
            *projections,
            Saved("new", (embed,), batched=True, name="attention"),
            Saved("new", (heads or 1,), "float32", batched=True, name="logsumexp"),
            *dropout,
        )

    def temporaries(self, args, x, y, device):
        # Live at once: the tokens (torch.cat's, then x + pos_embed's) and the projections'
        # outputs while the attention runs, or the two token tensors as the sum is made.
        c, tokens = x[0], x[1] * x[2] + 1
        embed, heads, _ = self.dims(args, c)
        if args["qkv_separate"]:
            projections = (2 * tokens + 1) * embed
        else:
            projections = 3 * tokens * embed
        attention = projections + embed + heads
        return (
            Saved("new", (tokens, c), batched=True, name="tokens"),
            Saved("new", (max(tokens * c, attention),), batched=True, name="projections"),
        )

    def explain(self, args, x, y, spatial):
        if spatial:
            return None
        return f"pools {shape_text(x)} to {y[0]} features"


def make_divisible(value: float, divisor: int = 8) -> int:
    """timm's make_divisible: the multiple of divisor nearest value (halves up), at least
    divisor, and not below 90% of value."""
    result = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return result + divisor if result < 0.9 * value else result


class FeatSizeWindow(Window):
    """A window that takes only one input size along its axis (`size`, set after construction):
    a layer whose position table was learned for that size. Otherwise a plain window."""

    size: int

    def takes(self, n: int) -> bool:
        return n == self.size and self.out(n) >= 1

    def refusal(self, n: int) -> str:
        return f"takes only {self.size} (its feat_size), not {n}"

    def keeps_size(self) -> bool:
        return False


def _pair(value) -> tuple[int, int]:
    return value if isinstance(value, tuple) else (value, value)


# Arguments of timm's self-attention layers (BottleneckAttn, HaloAttn, LambdaLayer), by timm's
# names: the output width and how it splits into heads.
_DIM_OUT = Param(
    "dim_out",
    "int",
    DERIVED,
    "dim_out",
    "output channels (default: the input's)",
    limit="max_channels",
)
_DIM_HEAD = Param(
    "dim_head",
    "int",
    DERIVED,
    "dim_head",
    "q and k channels per head (default: from qk_ratio)",
    limit="max_channels",
)
_QK_RATIO = Param(
    "qk_ratio", "float", 1.0, "qk_ratio", "q and k width over dim_out (without dim_head)", above=0
)
_QKV_BIAS = Param("qkv_bias", "bool", False, "qkv_bias", "biases of the q, k, v convolutions")


def _head_problem(op: str, args, c: int, check) -> bool:
    """Report dim_out not divisible into num_heads heads (timm asserts it); True when fine."""
    dim_out, heads = args.get("dim_out", c), args["num_heads"]
    if dim_out % heads:
        check.error(
            codes.BAD_ARGUMENT,
            f"{op} splits dim_out {dim_out} into num_heads={heads} heads of equal width, which "
            "does not divide it",
            arg="num_heads",
            hint="make dim_out a multiple of num_heads",
        )
        return False
    return True


def _stride_problem(op: str, args, check) -> bool:
    """Report a stride other than 1 or 2 (timm's layers pool or stride by 2 at most); True when
    fine."""
    if args["stride"] not in (1, 2):
        check.error(
            codes.BAD_ARGUMENT,
            f"{op} downsamples by a stride of 1 or 2, not {args['stride']}",
            arg="stride",
            hint="timm's self-attention layers take stride 1 or 2",
        )
        return False
    return True


def _qk_head(args, c: int) -> int:
    """timm's dim_head_qk: dim_head, or make_divisible(dim_out * qk_ratio, 8) // num_heads."""
    if "dim_head" in args:
        return args["dim_head"]
    return make_divisible(args.get("dim_out", c) * args["qk_ratio"]) // args["num_heads"]


class BottleneckAttn(Op):
    """timm's BottleneckAttn (Srinivas et al. 2021, "Bottleneck Transformers for Visual
    Recognition"): all-to-all multi-head self-attention over the H x W positions, q, k, v from
    one 1x1 conv (qkv), logits q·k / sqrt(d) plus relative position logits from a learned
    (2H - 1) x d and (2W - 1) x d table, then an average pool by 2 at stride 2. The tables fix
    the input to exactly `feat_size`: any other size is a located error, and the input-size
    analysis knows it (FeatSizeWindow).

    Widths for D = dim_out, n = num_heads: d_v = D / n, d = dim_head or make_divisible(D ·
    qk_ratio, 8) / n; qkv makes 2 n d + D channels. MACs for P = H W positions: the qkv conv
    C (2 n d + D) P, q·kᵀ P² n d, the position logits n d P (2W - 1 + 2H - 1), attention·v P² D."""

    name = "bottleneck_attn"
    doc = "multi-head self-attention with relative position logits (BoT, timm's BottleneckAttn)"
    params = (
        _DIM_OUT,
        Param(
            "feat_size",
            "size",
            torch="feat_size",
            doc="the only H x W it takes (its position tables)",
            limit="max_spatial",
        ),
        Param("stride", "int", 1, "stride", "1, or 2: a 2x2 average pool after"),
        Param("num_heads", "int", 4, "num_heads", "heads", limit="max_channels"),
        _DIM_HEAD,
        _QK_RATIO,
        _QKV_BIAS,
        Param("scale_pos_embed", "bool", False, "scale_pos_embed", "scale the position logits too"),
    )
    accepts = "spatial"
    family = OTHER
    emit = Emit(
        "BottleneckAttn",
        in_channels="dim",
        helper="bottleneck_attn.py.jinja",
        imports=("import torch",),
        uses=(
            "nn.Conv2d",
            "nn.Parameter",
            "nn.AvgPool2d",
            "nn.Identity",
            "nn.functional.pad",
            "torch.randn",
            "torch.split",
        ),
    )

    def channels(self, args, c):
        return args.get("dim_out", c)

    def maps_zero(self, args):
        # zeros in give v = 0 without biases, and the attention averages v
        return args.get("qkv_bias") is False

    def spatial(self, args):
        stride = args["stride"]
        windows = []
        for size in _pair(args["feat_size"]):
            window = FeatSizeWindow(stride, stride, 0, 1, False)
            window.size = size
            windows.append(window)
        return tuple(windows)

    def infer(self, x, args, check):
        if not _stride_problem(self.name, args, check) or not _head_problem(
            self.name, args, x[0], check
        ):
            return None
        height, width = _pair(args["feat_size"])
        if (x[1], x[2]) != (height, width):
            check.error(
                codes.BAD_ARGUMENT,
                f"bottleneck_attn's relative position tables are learned for {height}x{width} "
                f"inputs (feat_size), but its input is {shape_text(x)}",
                arg="feat_size",
                hint=f"feat_size=({x[1]}, {x[2]}) fits this input; timm's BoTNets take only "
                "their img_size (fixed_input_size)",
            )
            return None
        stride = args["stride"]
        return (args.get("dim_out", x[0]), height // stride, width // stride)

    def widths(self, args, c: int) -> tuple[int, int, int]:
        """(heads, q/k channels per head, dim_out)."""
        return args["num_heads"], _qk_head(args, c), args.get("dim_out", c)

    def counts(self, args, x, y):
        c, height, width = x
        heads, d, dim_out = self.widths(args, c)
        qkv = 2 * heads * d + dim_out
        positions = height * width
        params = c * qkv + (qkv if args["qkv_bias"] else 0) + (2 * height - 1 + 2 * width - 1) * d
        macs = (
            c * qkv * positions
            + positions * positions * heads * d
            + heads * d * positions * (2 * width - 1 + 2 * height - 1)
            + positions * positions * dim_out
        )
        return Counts(params, 0, macs)

    def label(self, args, times="×"):
        size = _pair(args.get("feat_size", (0, 0)))
        stride = args.get("stride", 1)
        return f"bottleneck_attn {size[0]}{times}{size[1]}" + (f" s{stride}" if stride != 1 else "")

    def parameters(self, args, x):
        c, height, width = x
        heads, d, dim_out = self.widths(args, c)
        qkv = 2 * heads * d + dim_out
        bias = ((qkv,),) if args["qkv_bias"] else ()
        return ((qkv, c, 1, 1), *bias, (2 * height - 1, d), (2 * width - 1, d))

    def saves(self, args, x, y, device):
        # The qkv conv its input; the matrix products q, k and v (copies that their reshapes
        # across the batch make; for a batch of one they are views of the conv's output, the
        # batch-1 exception resgen's per-sample model leaves out) and the attention weights
        # (softmax's output too); the position logits' products the two copies of q their
        # reshapes make; the average pool (stride 2) the attention output.
        c, height, width = x
        heads, d, dim_out = self.widths(args, c)
        positions = height * width
        pooled = (Saved("new", (dim_out, height, width), batched=True, name="attention"),)
        return (
            Saved("input"),
            Saved("new", (heads * d, positions), batched=True, name="q"),
            Saved("new", (heads * d, positions), batched=True, name="k"),
            Saved("new", (dim_out, positions), batched=True, name="v"),
            Saved("new", (heads * positions, d), batched=True, name="q_width"),
            Saved("new", (heads * positions, d), batched=True, name="q_height"),
            Saved("new", (heads, positions, positions), batched=True, name="weights"),
            *(pooled if args["stride"] == 2 else ()),
        )

    def temporaries(self, args, x, y, device):
        # The most is live as the summed logits are reshaped, before the output exists (which
        # the estimate adds to every op's step, so it is taken off here): q, k and v, the
        # scaled q·k logits, the position logits' sum and its copy, and each axis's padded
        # logits.
        c, height, width = x
        heads, d, dim_out = self.widths(args, c)
        positions = height * width
        live = (
            (2 * heads * d + dim_out) * positions
            + 3 * heads * positions * positions
            + heads * height * (width + 1) * (2 * width - 1)
            + heads * width * (height + 1) * (2 * height - 1)
        )
        output = y[0] * y[1] * y[2]
        return (Saved("new", (max(0, live - output),), batched=True, name="attention"),)


class BlockedWindow(Window):
    """A window over inputs that must be a multiple of `block` (set after construction), the
    blocks HaloAttn cuts its input into. Otherwise a plain window (stride 1 or 2)."""

    block: int

    def takes(self, n: int) -> bool:
        return n % self.block == 0 and self.out(n) >= 1

    def multiple(self) -> int:
        return self.block

    def refusal(self, n: int) -> str:
        return f"takes multiples of its block_size {self.block}, not {n}"

    def keeps_size(self) -> bool:
        return False


class HaloAttn(Op):
    """timm's HaloAttn (Vaswani et al. 2021, "Scaling Local Self-Attention for Parameter
    Efficient Visual Backbones"): the input is cut into block_size x block_size blocks; each
    block's queries attend to the keys and values of the block widened by halo_size on every
    side (zeros beyond the border), with relative position logits from learned (2 w - 1) x d
    tables, w = block_size + 2 halo_size. q comes from a 1x1 conv (strided at stride 2), k and v
    from another (kv); H and W must be multiples of block_size (an indivisible-size error
    otherwise, and the input-size search knows it). At stride 2 with an odd block_size or
    avg_down the queries keep stride 1 and a 2x2 average pool follows.

    Widths as BottleneckAttn's (num_heads n, dim_head d, dim_out D). MACs for P = H W
    positions, P' = P / s² queries, B = P / block_size² blocks of b² = P' / B queries: the q conv
    C n d P', the kv conv C (n d + D) P, q·kᵀ P' w² n d, the position logits n d P' (2 (2w - 1)),
    attention·v P' w² D."""

    name = "halo_attn"
    doc = "blocked local self-attention with a halo (HaloNet, timm's HaloAttn)"
    params = (
        _DIM_OUT,
        Param(
            "feat_size",
            "size",
            DERIVED,
            "feat_size",
            "accepted for timm's signature; unused",
            limit="max_spatial",
        ),
        Param("stride", "int", 1, "stride", "1, or 2: strided queries (or a 2x2 average pool)"),
        Param("num_heads", "int", 8, "num_heads", "heads", limit="max_channels"),
        _DIM_HEAD,
        Param("block_size", "int", 8, "block_size", "query blocks' side", limit="max_spatial"),
        Param("halo_size", "int", 3, "halo_size", "window margin", minimum=0, limit="max_spatial"),
        _QK_RATIO,
        _QKV_BIAS,
        Param("avg_down", "bool", False, "avg_down", "stride 2 by an average pool"),
        Param("scale_pos_embed", "bool", False, "scale_pos_embed", "scale the position logits too"),
    )
    accepts = "spatial"
    family = OTHER
    emit = Emit(
        "HaloAttn",
        in_channels="dim",
        helper="halo_attn.py.jinja",
        imports=("import torch",),
        uses=(
            "nn.Conv2d",
            "nn.Parameter",
            "nn.AvgPool2d",
            "nn.Identity",
            "nn.functional.pad",
            "torch.randn",
            "torch.split",
        ),
    )

    def channels(self, args, c):
        return args.get("dim_out", c)

    def maps_zero(self, args):
        # zeros in give v = 0 without biases, and the attention averages v
        return args.get("qkv_bias") is False

    def pooled(self, args) -> bool:
        """Whether stride 2 is an average pool after the attention (else strided queries)."""
        stride = args["stride"]
        return stride > 1 and (args["avg_down"] or args["block_size"] % stride != 0)

    def spatial(self, args):
        stride = args["stride"]
        window = BlockedWindow(stride, stride, 0, 1, False)
        window.block = args["block_size"]
        return window, window

    def infer(self, x, args, check):
        if not _stride_problem(self.name, args, check) or not _head_problem(
            self.name, args, x[0], check
        ):
            return None
        block = args["block_size"]
        if x[1] % block or x[2] % block:
            check.error(
                codes.INDIVISIBLE_SIZE,
                f"halo_attn cuts its input into {block}x{block} blocks (block_size), but its "
                f"input is {shape_text(x)}",
                arg="block_size",
                hint=f"an input whose height and width are multiples of {block}",
            )
            return None
        stride = args["stride"]
        return (args.get("dim_out", x[0]), x[1] // stride, x[2] // stride)

    def widths(self, args, c: int) -> tuple[int, int, int]:
        """(heads, q/k channels per head, dim_out)."""
        return args["num_heads"], _qk_head(args, c), args.get("dim_out", c)

    def counts(self, args, x, y):
        c, height, width = x
        heads, d, dim_out = self.widths(args, c)
        win = args["block_size"] + 2 * args["halo_size"]
        positions = height * width
        queries = positions if self.pooled(args) else positions // args["stride"] ** 2
        bias = args["qkv_bias"]
        params = (
            c * heads * d
            + c * (heads * d + dim_out)
            + ((2 * heads * d + dim_out) if bias else 0)
            + 2 * (2 * win - 1) * d
        )
        macs = (
            c * heads * d * queries
            + c * (heads * d + dim_out) * positions
            + queries * win * win * heads * d
            + heads * d * queries * 2 * (2 * win - 1)
            + queries * win * win * dim_out
        )
        return Counts(params, 0, macs)

    def label(self, args, times="×"):
        block, halo = args.get("block_size", 8), args.get("halo_size", 3)
        stride = args.get("stride", 1)
        return f"halo_attn b{block} h{halo}" + (f" s{stride}" if stride != 1 else "")

    def parameters(self, args, x):
        c = x[0]
        heads, d, dim_out = self.widths(args, c)
        win = args["block_size"] + 2 * args["halo_size"]
        bias = args["qkv_bias"]
        q = ((heads * d, c, 1, 1), *(((heads * d,),) if bias else ()))
        kv = ((heads * d + dim_out, c, 1, 1), *(((heads * d + dim_out,),) if bias else ()))
        return (*q, *kv, (2 * win - 1, d), (2 * win - 1, d))

    def sizes(self, args, x) -> tuple[int, int, int, int, int]:
        """(heads, d, dim_out, window side, blocks, block side of the queries)."""
        c, height, width = x
        heads, d, dim_out = self.widths(args, c)
        block = args["block_size"]
        blocks = (height // block) * (width // block)
        queries_side = block if self.pooled(args) else block // args["stride"]
        return heads, d, dim_out, block + 2 * args["halo_size"], blocks, queries_side

    def saves(self, args, x, y, device):
        # The convs their input; the matrix products the queries (a copy their reshapes make),
        # each window's keys and values (copies of the unfolded kv) and the attention weights
        # (softmax's output too); the position logits' products two more copies of q; the
        # average pool (avg_down) the attention output.
        heads, d, dim_out, win, blocks, b = self.sizes(args, x)
        queries = heads * blocks * b * b
        pooled = (Saved("new", (dim_out, x[1], x[2]), batched=True, name="attention"),)
        return (
            Saved("input"),
            Saved("new", (queries, d), batched=True, name="q"),
            Saved("new", (heads * blocks * win * win, d), batched=True, name="k"),
            Saved("new", (heads * blocks * win * win, dim_out // heads), batched=True, name="v"),
            Saved("new", (queries, d), batched=True, name="q_width"),
            Saved("new", (queries, d), batched=True, name="q_height"),
            Saved("new", (queries, win * win), batched=True, name="weights"),
            *(pooled if self.pooled(args) else ()),
        )

    def temporaries(self, args, x, y, device):
        # The most is live as the summed logits are reshaped, before the output exists (which
        # the estimate adds to every op's step, so it is taken off here): the queries and the
        # position embedding's copy of them, the unfolded windows of k and v, the scaled q·k
        # logits, the position logits' sum and its copy, and each axis's padded logits.
        heads, d, dim_out, win, blocks, b = self.sizes(args, x)
        queries = heads * blocks * b * b
        live = (
            2 * queries * d
            + heads * blocks * win * win * (d + dim_out // heads)
            + 2 * heads * blocks * b * (b + 1) * (2 * win - 1)
            + 3 * queries * win * win
        )
        output = y[0] * y[1] * y[2]
        return (Saved("new", (max(0, live - output),), batched=True, name="attention"),)


class LambdaLayer(Op):
    """timm's LambdaLayer (Bello 2021, "LambdaNetworks"): a 1x1 conv (qkv) makes queries
    (num_heads x k channels, batch norm `norm_q`), keys (k channels, softmax over positions) and
    values (v = dim_out / num_heads channels, batch norm `norm_v`); the output adds, per head,
    q times the content lambda k·vᵀ and q times a position lambda: from a local r x r
    convolution (`conv_lambda`, a Conv3d over the values) or, with r=0 (timm's r=None), from
    learned relative position embeddings `pos_emb` over a fixed feat_size input (any other
    size is a located error). A 2x2 average pool at stride 2. dim_head (k) is 16 unless given
    (timm's qk_ratio applies only without dim_head, which resgen does not model).

    MACs for P = H W positions: qkv C (n k + k + v) P, k·vᵀ k P v, the content output n P k v,
    the position lambdas k P v r² (convolution) or P² k v (embeddings), the position output
    n P k v."""

    name = "lambda_layer"
    doc = "lambda layer: content and position lambdas instead of attention (timm's LambdaLayer)"
    params = (
        _DIM_OUT,
        Param(
            "feat_size",
            "size",
            DERIVED,
            "feat_size",
            "the only H x W it takes with r=0",
            limit="max_spatial",
        ),
        Param("stride", "int", 1, "stride", "1, or 2: a 2x2 average pool after"),
        Param("num_heads", "int", 4, "num_heads", "heads", limit="max_channels"),
        Param("dim_head", "int", 16, "dim_head", "q and k channels per head", limit="max_channels"),
        Param(
            "r",
            "int",
            9,
            "r",
            "lambda convolution size; 0: relative position embeddings",
            minimum=0,
            limit="max_kernel",
        ),
        _QKV_BIAS,
    )
    accepts = "spatial"
    family = OTHER
    emit = Emit(
        "LambdaLayer",
        in_channels="dim",
        helper="lambda_layer.py.jinja",
        imports=("import torch",),
        uses=(
            "nn.Conv2d",
            "nn.Conv3d",
            "nn.BatchNorm2d",
            "nn.Parameter",
            "nn.AvgPool2d",
            "nn.Identity",
            "torch.arange",
            "torch.randn",
            "torch.split",
            "torch.stack",
        ),
    )

    def channels(self, args, c):
        return args.get("dim_out", c)

    def maps_zero(self, args):
        # zeros in give q = 0 and v = 0 without biases (batch norm keeps zeros at init)
        return args.get("qkv_bias") is False

    def spatial(self, args):
        stride = args["stride"]
        if args["r"] == 0 and "feat_size" in args:
            windows = []
            for size in _pair(args["feat_size"]):
                window = FeatSizeWindow(stride, stride, 0, 1, False)
                window.size = size
                windows.append(window)
            return tuple(windows)
        window = Window(stride, stride, 0, 1, False)
        return window, window

    def infer(self, x, args, check):
        if not _stride_problem(self.name, args, check) or not _head_problem(
            self.name, args, x[0], check
        ):
            return None
        if args["r"] == 0:
            if "feat_size" not in args:
                check.error(
                    codes.MISSING_ARGUMENT,
                    "lambda_layer with r=0 takes its position lambdas from embeddings learned "
                    "for one input size: give feat_size",
                    arg="r",
                    hint=f"feat_size=({x[1]}, {x[2]}) fits this input",
                )
                return None
            height, width = _pair(args["feat_size"])
            if (x[1], x[2]) != (height, width):
                check.error(
                    codes.BAD_ARGUMENT,
                    f"lambda_layer's relative position embeddings are learned for "
                    f"{height}x{width} inputs (feat_size), but its input is {shape_text(x)}",
                    arg="feat_size",
                    hint=f"feat_size=({x[1]}, {x[2]}) fits this input",
                )
                return None
        elif args["r"] % 2 == 0:
            check.error(
                codes.BAD_ARGUMENT,
                f"lambda_layer's lambda convolution pads r // 2 on each side, which keeps the "
                f"size only for an odd r, not {args['r']}",
                arg="r",
                hint=f"r={args['r'] + 1}",
            )
            return None
        stride = args["stride"]
        return (args.get("dim_out", x[0]), x[1] // stride, x[2] // stride)

    def widths(self, args, c: int) -> tuple[int, int, int]:
        """(heads, k: q and k channels per head, v: value channels)."""
        heads = args["num_heads"]
        return heads, args["dim_head"], args.get("dim_out", c) // heads

    def counts(self, args, x, y):
        c, height, width = x
        heads, k, v = self.widths(args, c)
        positions = height * width
        qkv = heads * k + k + v
        r = args["r"]
        params = c * qkv + (qkv if args["qkv_bias"] else 0) + 2 * heads * k + 2 * v
        buffers = 2 * heads * k + 1 + 2 * v + 1
        macs = c * qkv * positions + k * positions * v + 2 * heads * positions * k * v
        if r:
            params += k * r * r + k
            macs += k * positions * v * r * r
        else:
            fh, fw = _pair(args.get("feat_size", (x[1], x[2])))
            params += (2 * fh - 1) * (2 * fw - 1) * k
            buffers += 2 * positions * positions
            macs += positions * positions * k * v
        return Counts(params, buffers, macs)

    def label(self, args, times="×"):
        r = args.get("r", 9)
        stride = args.get("stride", 1)
        return f"lambda_layer {'r' + str(r) if r else 'rel'}" + (
            f" s{stride}" if stride != 1 else ""
        )

    def parameters(self, args, x):
        c = x[0]
        heads, k, v = self.widths(args, c)
        qkv = heads * k + k + v
        bias = ((qkv,),) if args["qkv_bias"] else ()
        norms = ((heads * k,), (heads * k,), (v,), (v,))
        r = args["r"]
        if r:
            position = ((k, 1, r, r, 1), (k,))
        else:
            fh, fw = _pair(args.get("feat_size", (x[1], x[2])))
            position = ((2 * fh - 1, 2 * fw - 1, k),)
        return ((qkv, c, 1, 1), *bias, *norms, *position)

    def saves(self, args, x, y, device):
        # The qkv conv its input; the norms their input (views of qkv's output) and their batch
        # mean and inverse std; the matrix products the keys' softmax, the values, the content
        # lambda, the queries (a copy per product, as their broadcasts need) and the position
        # lambdas (copied across the heads), and with r=0 the gathered embeddings and the
        # values broadcast over the positions; the average pool (stride 2) the output.
        c, height, width = x
        heads, k, v = self.widths(args, c)
        positions = height * width
        qkv = heads * k + k + v
        relative = ()
        if not args["r"]:
            relative = (
                Saved("new", (positions, positions, k), batched=True, name="pos_emb"),
                Saved("new", (positions, positions, v), batched=True, name="values"),
            )
        pooled = (Saved("new", (heads * v, positions), batched=True, name="out"),)
        return (
            Saved("input"),
            Saved("new", (qkv, positions), batched=True, name="qkv"),
            Saved("new", (heads * k,), "param", name="norm_q.save_mean"),
            Saved("new", (heads * k,), "param", name="norm_q.save_invstd"),
            Saved("new", (v,), "param", name="norm_v.save_mean"),
            Saved("new", (v,), "param", name="norm_v.save_invstd"),
            Saved("new", (k, positions), batched=True, name="k"),
            Saved("new", (positions, v), batched=True, name="v"),
            Saved("new", (heads, k, v), batched=True, name="content_lambda"),
            Saved("new", (heads, positions, k), batched=True, name="q"),
            *relative,
            Saved("new", (heads, positions, k, v), batched=True, name="position_lambda"),
            Saved("new", (heads, positions, k), batched=True, name="q_positions"),
            *(pooled if args["stride"] == 2 else ()),
        )

    def temporaries(self, args, x, y, device):
        # The most is live as the position output is made, before the output exists (which
        # the estimate adds to every op's step, so it is taken off here): the normalised q, v
        # and the keys' softmax, the content lambda and output, the position lambdas (the
        # convolution's, or the product with the gathered embeddings, kept too) and their copy
        # across the heads, the copy of q, and the position output.
        c, height, width = x
        heads, k, v = self.widths(args, c)
        positions = height * width
        live = (
            2 * heads * positions * k
            + positions * v
            + k * positions
            + k * v
            + 2 * heads * positions * v
            + positions * k * v
            + heads * positions * k * v
        )
        if not args["r"]:  # not measured yet: the gathered embeddings, at least
            live += positions * positions * k
        output = y[0] * y[1] * y[2]
        return (Saved("new", (max(0, live - output),), batched=True, name="lambdas"),)

    def buffers(self, args, x):
        heads, k, v = self.widths(args, x[0])
        norms = (
            Buffer((heads * k,)),
            Buffer((heads * k,)),
            Buffer((), "int64"),
            Buffer((v,)),
            Buffer((v,)),
            Buffer((), "int64"),
        )
        if args["r"]:
            return norms
        positions = x[1] * x[2]
        return (*norms, Buffer((2, positions, positions), "int64"))


BUILTIN: tuple[Op, ...] = (AttentionPool2d(), BottleneckAttn(), HaloAttn(), LambdaLayer())
