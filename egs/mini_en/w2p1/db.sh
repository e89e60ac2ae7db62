# Corpus locations. mini_en is synthesised locally by stage 0 and needs no download.
MINI_EN=corpus
