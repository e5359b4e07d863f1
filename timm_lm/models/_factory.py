"""Generate LM entrypoints and pretrained cfgs from timm's own registry.

Each LM family extends one timm module (``resnet``, ``resnetv2``): for every model timm registers
there, ``lm_<name>`` is registered here, with pretrained cfgs derived from timm's cfgs for that model.
Nothing is listed by hand, so a ResNet added to timm gets its LM version by itself.
"""
from typing import Any, Callable, Dict, Iterable

from timm.models import generate_default_cfgs, get_arch_pretrained_cfgs, is_model, is_model_in_modules, \
    register_model, split_model_name_tag

from ..pretrained import PAPER_ID, lm_trained_cfgs, warm_start_tag

__all__ = ['lm_pretrained_cfgs', 'make_entrypoint', 'unshadowed', 'register_family']

_DROP_FIELDS = ('architecture', 'tag', 'source', 'notes', 'paper_ids', 'paper_name')


def lm_pretrained_cfgs(lm_name: str, base_name: str) -> Dict[str, Dict[str, Any]]:
    """Pretrained cfgs ('lm_name.tag' -> fields) for an LM model built on timm's ``base_name``.

    Every timm tag with weights becomes a warm-start tag (same weights, k_n = 0) in timm's order, so
    the default tag is the warm start from timm's default weights. Tags without weights keep their
    name and data config. The model's LM-trained tags (see ``timm_lm.pretrained``) follow.
    """
    cfgs = {}
    first_fields = None
    for full_name, cfg in get_arch_pretrained_cfgs(base_name).items():
        _, tag = split_model_name_tag(full_name)
        fields = {k: v for k, v in cfg.to_dict().items() if k not in _DROP_FIELDS}
        fields['paper_ids'] = PAPER_ID
        first_fields = first_fields or fields
        if cfg.has_weights:
            note = f'warm start: the weights of timm {full_name} with every k_n = 0 (computes that ResNet exactly)'
            cfgs[f'{lm_name}.{warm_start_tag(tag)}'] = dict(fields, notes=(note,))
        else:
            cfgs[f'{lm_name}.{tag}' if tag else lm_name] = fields
    if first_fields is None:
        first_fields = dict(paper_ids=PAPER_ID)
        cfgs[lm_name] = first_fields
    cfgs.update(lm_trained_cfgs(lm_name, first_fields))
    return cfgs


def make_entrypoint(lm_name: str, create: Callable[..., Any], module: str, doc: str) -> Callable[..., Any]:
    """A named entrypoint function, as ``@register_model`` expects (it registers by ``__name__``)."""
    def entrypoint(pretrained: bool = False, **kwargs: Any):
        return create(lm_name, pretrained, **kwargs)
    entrypoint.__name__ = entrypoint.__qualname__ = lm_name
    entrypoint.__module__ = module
    entrypoint.__doc__ = doc
    return entrypoint


def unshadowed(lm_names: Iterable[str], module: str) -> list:
    """The names not already taken by another module's model: an LM name never replaces timm's."""
    return [n for n in lm_names if not is_model(n) or is_model_in_modules(n, [module])]


def register_family(namespace: Dict[str, Any], timm_names: Dict[str, str], create: Callable[..., Any],
                    doc: str) -> Dict[str, str]:
    """Register ``lm name -> timm name`` entrypoints into the module whose globals are ``namespace``.

    Sets the module's ``default_cfgs`` first (timm's ``register_model`` reads them from the module), and
    returns the names registered (those another module's model does not already hold).
    """
    module = namespace['__name__']
    names = {n: timm_names[n] for n in unshadowed(timm_names, module.rsplit('.', 1)[-1])}
    namespace['default_cfgs'] = generate_default_cfgs({
        key: cfg for lm_name, base in names.items() for key, cfg in lm_pretrained_cfgs(lm_name, base).items()})
    for lm_name, base in names.items():
        namespace[lm_name] = register_model(make_entrypoint(lm_name, create, module, doc.format(base=base)))
    return names
