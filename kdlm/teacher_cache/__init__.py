"""The cached teacher signal: one teacher pass over an offline training file, shared by every student and
method distilled from that teacher on that file (docs/design.md, "Teacher signal cache").

:mod:`~kdlm.teacher_cache.config` is the `teacher_signal` config section, :mod:`~kdlm.teacher_cache.fingerprint`
what a cache was made with, :mod:`~kdlm.teacher_cache.store` its files, :mod:`~kdlm.teacher_cache.build` the
stage that writes one.
"""
