from setuptools import find_packages, setup

setup(
    name="gdb_xenpte",
    version="0.1.0",
    description="GDB extension: walk x86 guest page tables and explain every entry, Xen-aware",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # scripts/ installs as gdb_xenpte_scripts: a top-level "scripts" package would collide.
    packages=find_packages(include=["gdb_xenpte", "gdb_xenpte.*"]) + ["gdb_xenpte_scripts"],
    package_dir={"gdb_xenpte_scripts": "scripts"},
    package_data={"gdb_xenpte": ["data/*"]},
    install_requires=[
        "tabulate>=0.8",
        "pygdbmi>=0.10",
        "pyelftools>=0.29",
        "tqdm>=4",
    ],
    extras_require={
        "fast": ["numpy>=1.21"],
        "test": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6", "jsonschema>=4",
                 "numpy>=1.21"],
        "compress": ["python-lzo>=1.14", "python-snappy>=0.6", "zstandard>=0.19"],
    },
    entry_points={"console_scripts": [
        "xen-pte-gdbinit = gdb_xenpte.gdb_load:main",
        "xen-pte-dump = gdb_xenpte_scripts.xen_pte_dump:main",
        "xen-pte-diff = gdb_xenpte_scripts.xen_pte_diff:main",
    ]},
)
