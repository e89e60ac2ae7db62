# Corpus locations (override by exporting the variables before ./run.sh).
#   MINI_EN : where stage 0 synthesises the corpus (it needs no download). Paths must not contain spaces.
MINI_EN=${MINI_EN:-corpus}
