"""The engine that trains and samples any model kind: the prepared-data loader (``data``), the shared
trainer (``trainer``) and the sample stage (``sample``). Kinds (the interface, the registry and the
adapters) are ``benchmark.kinds``; the engine asks the registry for them by name."""
