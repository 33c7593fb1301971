/*
 * Runs a QuPath script outside QuPath: the QP calls alregions.groovy makes are stood in for by
 * the methods below, on a hierarchy held as GeoJSON features. Not QuPath: only what the script
 * calls, with the behaviour QuPath's source gives it (QP.java, PathIO, QuPathTypeAdapters,
 * PathClass.fromString; see tests/qupath_shapes.py). Used by tests/test_cli_session.py when a
 * `groovy` command is installed.
 *
 *   groovy qupath_stub.groovy SCRIPT IMAGE HIERARCHY_IN HIERARCHY_OUT
 *
 * HIERARCHY_IN/OUT: the image's objects before and after the script, as a FeatureCollection.
 */

import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import org.codehaus.groovy.control.CompilerConfiguration

class FakeClass {
    List<String> names

    FakeClass getBaseClass() { new FakeClass(names: [names[0]]) }

    String getName() { names[-1] }

    String toString() { names.join(': ') }
}

class FakeObject {
    Map feature

    String getObjectType() { feature.properties?.objectType ?: 'annotation' }

    // PathClassTypeAdapter.read: "names", or "name" split at ':' (PathClass.fromString)
    FakeClass getPathClass() {
        def c = feature.properties?.classification
        if (c == null)
            return null
        return new FakeClass(names: c.names ?: c.name.split(':').collect { it.trim() })
    }

    Map getMeasurements() { feature.properties?.measurements ?: [:] }
}

abstract class QPStub extends Script {
    static String PROJECT_BASE_DIR = '{%PROJECT}'
    static List<FakeObject> objects = []
    static File image

    def getCurrentImageData() {
        new Expando(getServer: { -> new Expando(getURIs: { -> [image.toURI()] }) })
    }

    def getProject() { null }

    String buildFilePath(String... parts) { parts.join(File.separator) }

    Collection getAnnotationObjects() { objects.findAll { it.objectType == 'annotation' } }

    Collection getTileObjects() { objects.findAll { it.objectType == 'tile' } }

    void exportObjectsToGeoJson(Collection pathObjects, String path, String option, String... more) {
        assert option == 'FEATURE_COLLECTION'
        new File(path).setText(JsonOutput.toJson([type: 'FeatureCollection', features: pathObjects*.feature]), 'UTF-8')
    }

    boolean importObjectsFromFile(String path) {
        def data = new JsonSlurper().parse(new File(path), 'UTF-8')
        def features = data instanceof Map ? (data.type == 'Feature' ? [data] : data.features) : data
        objects.addAll(features.collect { new FakeObject(feature: it) })
        return true
    }

    def getCurrentHierarchy() {
        new Expando(removeObjects: { Collection pathObjects, boolean keepChildren -> objects.removeAll(pathObjects) })
    }

    void fireHierarchyUpdate() {}
}

def (scriptPath, imagePath, hierarchyIn, hierarchyOut) = args as List
QPStub.image = new File(imagePath)
QPStub.objects = new JsonSlurper().parse(new File(hierarchyIn), 'UTF-8').features.collect { new FakeObject(feature: it) }
def config = new CompilerConfiguration()
config.scriptBaseClass = QPStub.name
new GroovyShell(this.class.classLoader, new Binding(), config).evaluate(new File(scriptPath))
new File(hierarchyOut).setText(JsonOutput.toJson([type: 'FeatureCollection', features: QPStub.objects*.feature]), 'UTF-8')
