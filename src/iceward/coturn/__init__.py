"""``iceward import-coturn``: a coturn ``turnserver.conf`` read the way coturn reads it and
translated into iceward's TOML settings, with what does not carry over, why, and what iceward
does instead.

- :mod:`iceward.coturn.parse`: coturn's config syntax (``key=value``, ``key value``, bare flags,
  whole-line ``#`` comments, repeated keys);
- :mod:`iceward.coturn.table`: every coturn option and what becomes of it (the README's
  "Coming from coturn" map is generated from it);
- :mod:`iceward.coturn.convert`: the translation, checked against ``ServerSettings``, and the
  TOML it writes;
- :mod:`iceward.coturn.command`: the subcommand.
"""
