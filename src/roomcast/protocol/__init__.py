"""The pure protocol layer: frames (``messages``), codes (``codes``), the
per-connection state machine (``session``) and server frame bytes
(``wsframe``).

Nothing in this package does I/O or touches an event loop. Import from the
submodules; this package imports nothing so that ``roomcast.exceptions`` can
use ``protocol.codes`` without a cycle.
"""
