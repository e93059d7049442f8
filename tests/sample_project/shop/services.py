"""Stand-ins for the services the steps call: a payment gateway and a warehouse."""

import itertools
from dataclasses import dataclass, field


@dataclass
class PaymentGateway:
    """Charges are idempotent by key, as with real payment APIs."""

    charges: dict[str, dict[str, object]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    _ids: "itertools.count[int]" = field(default_factory=itertools.count)

    def charge(self, key: str, order_id: str, amount: int) -> str:
        self.calls.append(f"charge {order_id}")
        if key not in self.charges:
            self.charges[key] = {
                "id": f"ch_{next(self._ids)}",
                "order": order_id,
                "amount": amount,
                "refunded": False,
            }
        return str(self.charges[key]["id"])

    def refund(self, charge_id: str) -> None:
        self.calls.append(f"refund {charge_id}")
        for charge in self.charges.values():
            if charge["id"] == charge_id:
                charge["refunded"] = True

    def balance(self, order_id: str) -> int:
        """What the customer of ``order_id`` has paid, net of refunds."""
        return sum(
            int(str(c["amount"]))
            for c in self.charges.values()
            if c["order"] == order_id and not c["refunded"]
        )


@dataclass
class Warehouse:
    reserved: dict[str, int] = field(default_factory=dict)

    def reserve(self, sku: str) -> None:
        self.reserved[sku] = self.reserved.get(sku, 0) + 1

    def release(self, sku: str) -> None:
        self.reserved[sku] -= 1
        if not self.reserved[sku]:
            del self.reserved[sku]


gateway = PaymentGateway()
warehouse = Warehouse()
