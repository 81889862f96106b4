"""Win rate: answers written by finished runs, judged pairwise with the order swapped.

``answers`` writes a run's answers at the end of training (the final weights are not kept);
``judge`` is the judge plugin contract (``ldreg_register_judges``); ``winrate`` pairs two runs'
answers, asks a judge in both orders, stores the verdicts and summarises them; ``cli`` is
``ldreg winrate``. Nothing here is imported by training except ``answers``.
"""
