"""Two host CPU devices for the whole test session, so the tests can compare model
training split over two devices with the unsplit one (set before JAX starts)."""

import mbrlax

mbrlax.configure(cpu_devices=2)
