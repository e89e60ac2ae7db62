"""The synthetic mini_en corpus generator (used only by egs/mini_en/w2p1/local/data.sh).

* ``mini_en``: the seeded text generator (ASR sentences and the ST/SLU/SQQA/SQA task sets with references);
* ``lexicon``: its English-French lexicon and French agreement rules (the ST references);
* ``espeak``: speech with espeak-ng (voices, speed, pitch; 16 kHz mono), the default corpus's only engine;
* ``engines``: espeak-ng, flite and festival behind one interface (``make_corpus --engines``; ``w2p info``);
* ``make_corpus``: the CLI that plans, synthesises (in parallel jobs) and writes the manifests
  ``<corpus>/<set>.jsonl`` that ``w2p.data.corpora.prepare_mini_en`` reads.

Kept apart from ``w2p.data`` (the corpus-independent data layer): nothing outside this package and the mini_en
recipe imports it.
"""
