"""Each method's pure math under its own name: AsyPPO's critic ensembles (:mod:`.asyppo`), attention-based credit
(:mod:`.credit`, run by :mod:`.attention_credit`), BARD's thinking budgets (:mod:`.bard`, :mod:`.bard_evaluation`)
and RAVR's objective, answer posterior, answer utility and posterior prompt (:mod:`.ravr` and ``ravr_*``)."""
