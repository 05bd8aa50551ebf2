"""Self-attention layers of timm's attention ResNets, each exactly as timm computes it: CLIP's
attention pool (timm.layers.AttentionPool2d).

MACs: torchvision's convention counts the multiply-accumulates of convolutions and linear layers;
attention adds matrix products of activations with activations (q·kᵀ and the attention weights
times v), which resgen counts too, as torch.utils.flop_counter does (MACs = its FLOPs / 2).
Softmax, scaling, position-embedding additions and resampling count 0, like activations."""

from __future__ import annotations

from resgen import codes
from resgen.ops.base import DERIVED, LINEAR, Counts, Emit, Op, Param, Saved
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


BUILTIN: tuple[Op, ...] = (AttentionPool2d(),)
