"""The engine that trains and samples any model kind: the kind interface (``kind``), the registry of
kinds by name (``registry``), the prepared-data loader (``data``), the shared trainer (``trainer``)
and the sample stage (``sample``)."""
