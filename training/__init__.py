"""Training code (depends on `engine`, never the reverse).

Planned, one entry point each (see the open issues): the procedural captioned music corpus and
MusicGen-nano pretraining; the diversity embedding E and the quality scorers; diversity-rewarded CFG
distillation (on-policy KL to the CFG teacher + REINFORCE on the diversity reward) producing θ_q and θ_d;
and the quality–diversity evaluation.
"""
