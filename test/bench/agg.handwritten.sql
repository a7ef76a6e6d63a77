-- agg: count and sum over every row of the session's tenant (the whale).
SELECT count(*), sum(amount) FROM bench_handwritten;
