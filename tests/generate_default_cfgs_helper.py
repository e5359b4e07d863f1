"""Which tag timm makes the default, from a dict of 'model.tag' cfgs (timm's own rule)."""
from timm.models import generate_default_cfgs


def default_tag_of(cfgs: dict) -> str:
    (default_cfg,) = generate_default_cfgs(cfgs).values()
    return default_cfg.tags[0]
