"""Every setting of qvedit, as data: one dataclass per config group, the top-level keys, and the schema.

Each module holds dataclasses, their tags and pure methods only, and imports nothing that builds from them
(``qvedit.core.errors``, ``qvedit.settings.field_tags``, ``qvedit.core.files``, hydra and omegaconf at most): the schema
loads without torch, diffusers or any runtime module. What a setting does is in the code beside the runtime it
builds (docs/architecture.md).
"""
