"""Message formats the engine reads and writes (HL7 v2, ...)."""
