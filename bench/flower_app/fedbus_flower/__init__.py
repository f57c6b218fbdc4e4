"""fedbus's scale workload as a Flower app (bench/flower_app); see app.py."""
