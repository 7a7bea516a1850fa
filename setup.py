from setuptools import find_packages, setup

setup(
    name="twinhpc",
    version="0.1.0",
    packages=find_packages(include=["twinhpc", "twinhpc.*"]),
    python_requires=">=3.11",
    entry_points={"console_scripts": ["twinhpc = twinhpc.cli.main:main"]},
)
