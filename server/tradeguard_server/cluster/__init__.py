"""Many sidecars sharing one PostgreSQL database (issue 17): the shared control state (changes.py, plane.py,
listener.py), trader ownership (leases.py, takeover.py) and the account view (account_view.py).

Kept free of imports: the store imports cluster.changes (a change row is appended in the changing transaction),
and the plane imports the store and the services.
"""
