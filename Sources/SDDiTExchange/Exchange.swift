// SPEC §7 exchange layout.
