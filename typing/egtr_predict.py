"""A user predicts scene graphs and iterates objects and relations."""

from egtr import EGTRPredictor, Relation, SceneGraph, SceneObject

predictor = EGTRPredictor("converted-vg-model", device="auto", dtype="auto", top_k=50)
graphs: list[SceneGraph] = predictor.predict(["a.jpg", "b.jpg"], batch_size=2)
for graph in graphs:
    width, height = graph.image_size
    for obj in graph.objects:
        typed_obj: SceneObject = obj
        x1, y1, x2, y2 = obj.box
        name: str = obj.label_name
        confidence: float = obj.score
    for rel in graph.relations:
        typed_rel: Relation = rel
        subject: SceneObject = graph.objects[rel.subject]
        target: SceneObject = graph.objects[rel.object]
        predicate: str = rel.predicate_name
        triplet_score: float = rel.score
    triplets: list[tuple[str, str, str, float]] = graph.triplets()
    as_json: dict[str, object] = graph.to_dict()
