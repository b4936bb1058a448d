"""Reading results back with pandas: the paper's tables and the report."""
