"""Clients of the services: what a script or the command line uses to talk to them over the bus.

``writes.BusWrites`` is a Butler's writer while a registry service serves the repository;
``blessing`` asks the calibration service to bless a suite and waits for its answer. They sit
above the library and the bus (they use both) and below the command line.
"""
