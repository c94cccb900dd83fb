"""Counting a kernel module's launcher calls, so an op test cannot pass through the eager fallback."""
import collections


def spy_on_launchers(monkeypatch, module, names) -> collections.Counter:
    """Wrap ``module.<name>`` for each name; the returned Counter counts the calls per name."""
    calls = collections.Counter()
    for name in names:
        def spy(*args, _fn=getattr(module, name), _name=name, **kwargs):
            calls[_name] += 1
            return _fn(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return calls
