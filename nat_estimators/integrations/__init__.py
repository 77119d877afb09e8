"""Trainer integrations, each behind its own optional extra.

Import the submodule for your trainer explicitly (``nat_estimators.integrations.trl``,
``nat_estimators.integrations.verl``); importing one without its trainer installed raises an
:class:`ImportError` naming the extra to install.
"""
