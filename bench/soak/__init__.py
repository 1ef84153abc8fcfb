"""The soak harness behind ``make soak`` (never part of ``make test``): see ``__main__``."""
