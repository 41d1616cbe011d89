"""``--help`` that shows each option's default (when it has a meaningful one)."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped paragraph by paragraph (blank lines kept); ``(default: X)``
    after an option's help unless the default is absent (None), off (False) or already
    mentioned."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(super(DefaultsHelpFormatter, self)._fill_text(p, width, indent)
                           for p in text.split("\n\n"))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or "default" in text or default in (None, False, [], "") \
                or default is argparse.SUPPRESS or action.option_strings == []:
            return text
        return f"{text} (default: %(default)s)"
