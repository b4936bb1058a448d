"""The systems model (SPEC section 4, "Systems model"): device profiles, the virtual clock's
arithmetic and who takes part when. Pure and below every other layer but settings/, so the
server (deadlines), a method's schedule (asl) and the measurements all use the same formulas."""
