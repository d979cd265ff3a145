"""PyTorch forward hooks recording block outputs under SPEC section 7 names."""

from .convert import capture
from .spec import ExchangeError


def _core(model):
    """The module that holds `blocks`, looking through DDP (.module), torch.compile
    (._orig_mod) and EDM-style preconditioning wrappers (.model)."""
    m = model
    for _ in range(8):
        if hasattr(m, "blocks"):
            return m
        nxt = next((getattr(m, a) for a in ("module", "_orig_mod", "model", "net") if hasattr(m, a)), None)
        if nxt is None:
            break
        m = nxt
    raise ExchangeError(f"{type(model).__name__}: no `blocks` found (also looked in .module, "
                        "._orig_mod, .model, .net)")


def register_sddit_hooks(model, store, prefix="student"):
    """Records block outputs of a DiT / MaskDiT-structured model under SPEC section 7 names.

    Forward hooks (register_forward_hook) on `model.blocks[i]` store their output under
    f"{prefix}.enc.block.{i}" and, for prefix "student", on `model.decoder_blocks[i]` under
    "student.dec.block.{i}". Values are stored as detached CPU torch tensors with their dtype
    kept (capture(): a float32 model records float32, bf16 records bfloat16), so that
    write_exchange stores them at the precision the model ran in; each forward overwrites
    them (the last forward wins). Use prefix="teacher" on the teacher (EMA)
    encoder. Returns the handles: `for h in handles: h.remove()` when done.

    Expected shapes: student.enc.block.I [N, 1+V, D] (CLS first, then the visible tokens in
    ascending position order), teacher.enc.block.I [N, 1+T, D], student.dec.block.I [N, T, Dd].

    Names that hooks cannot see in general and need manual capture (store[name] =
    capture(tensor): dtype kept; widening to float64 would make a float32 run fail the
    float64 rule):
      student.tokens [N,T,D]   embed(c_in*x) + pos_embed[:, 1:] - the patch tokens before
                               masking: m.x_embedder(c_in * x_S) + m.pos_embed[:, 1:]
      student.c [N,D]          m.t_embedder(c_noise) + m.y_embedder(labels, False)
                               (train=False: no label dropout in an exchange run)
      student.dec.in [N,T,D]   the decoder input H before decoder_layer (SPEC section 2 step 7:
                               encoder outputs at visible positions, tokens at hidden ones);
                               a forward pre-hook on m.decoder_layer sees it as args[0]:
                               m.decoder_layer.register_forward_pre_hook(
                                   lambda mod, args: store.__setitem__("student.dec.in", capture(args[0])))
      student.F, student.D     the raw network output F (unpatchified, [N,C,H,W]) and the
                               preconditioned D = c_skip*x + c_out*F: values of your EDM
                               wrapper's forward (e.g. F = the inner model's output)
      student.head.cls/.patch, teacher.head.cls/.patch
                               the DINO head's logits [N,K] for CLS and [N,V,K] at the visible
                               positions (teacher: its [N,T,K] output gathered at the
                               student's visible positions), taken where your loss gets them.
    """
    store_fn = store.__setitem__
    m = _core(model)
    handles = []

    def rec(name):
        def hook(_mod, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            store_fn(name, capture(out))
        return hook

    for i, b in enumerate(m.blocks):
        handles.append(b.register_forward_hook(rec(f"{prefix}.enc.block.{i}")))
    if prefix == "student":
        for i, b in enumerate(getattr(m, "decoder_blocks", None) or []):
            handles.append(b.register_forward_hook(rec(f"{prefix}.dec.block.{i}")))
    return handles
