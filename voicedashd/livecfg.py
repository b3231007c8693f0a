"""The configuration in force, replaced as a whole on a successful reload."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config


@dataclass
class LiveConfig:
    """Holds the current Config; readers look it up per use so reloads take effect."""

    current: Config
    generation: int = 0

    def replace(self, config: Config) -> None:
        """Put a new config in force."""
        self.current = config
        self.generation += 1
